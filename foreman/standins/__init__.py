"""Stand-in servers for tests and demos: :mod:`.ollama` (a fake Ollama), :mod:`.anthropic`
(Claude's Messages API) and :mod:`.openai` (an OpenAI-compatible API).

They are test oracles: they share no code with the foreman modules they test, and each
behaves as the real server does on the wire.
"""
