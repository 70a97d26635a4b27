"""The data plane: the bytes of model requests, relayed byte for byte and cheaply.

:mod:`.native` serves Ollama's ``/api/*`` routes; :mod:`.gate` is the one-chat-at-a-time
queue of an Ollama server; :mod:`.relay` streams a target's answer to the client;
:mod:`.bodies`, :mod:`.names`, :mod:`.jsonwire`, :mod:`.exchange` and :mod:`.errors` are the
request bodies, model names, Go-compatible JSON, per-request state and error types they
share; :mod:`.routing` and :mod:`.listing` turn a requested model into a backend's.
"""
