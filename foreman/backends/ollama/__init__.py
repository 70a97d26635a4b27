"""What an Ollama backend owns besides its gate: the target client (:mod:`.target`), the tags
poller (:mod:`.inventory`) and the ps residency watcher with the embedder warm-up
(:mod:`.residency`)."""
