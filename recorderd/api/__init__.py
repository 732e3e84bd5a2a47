"""The HTTP API (aiohttp): app, auth, one module per resource, the playlist builder."""
