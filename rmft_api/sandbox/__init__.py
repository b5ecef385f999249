"""An OpenAI-compatible test server on loopback: chat completions from any Provider, real rate
limits with OpenAI's headers, and injected faults (429s, 5xx, slow replies, dropped connections,
malformed bodies). Start it with `rmft-api sandbox` or, in tests, `server.SandboxServer`.

Needs the `sandbox` extra (starlette, uvicorn); nothing outside this package imports them.
"""
