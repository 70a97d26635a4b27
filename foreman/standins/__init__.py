"""Stand-in servers for tests and demos: :mod:`.ollama` (a fake Ollama), :mod:`.anthropic`
(Claude's Messages API) and :mod:`.openai` (an OpenAI-compatible API); :mod:`.cloud` holds
what the last two share (their server shell: faults, statistics, streaming, ASGI).

They are test oracles: they share code only with each other, none with the foreman modules
they test, and each behaves as the real server does on the wire.
"""
