"""An OpenAI-compatible test server on loopback: chat completions from any Provider, real rate
limits with OpenAI's headers, files and fine-tuning jobs (trained for real with the local LoRA
trainer when the backing is a local model), and injected faults (429s, 5xx, slow or late replies,
dropped connections, malformed bodies, failing jobs). Start it with `rmft-api sandbox` or, in
tests, `server.SandboxServer`.

Needs the `sandbox` extra (starlette, uvicorn); nothing outside this package imports them.
"""
