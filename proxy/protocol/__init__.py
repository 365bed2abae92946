"""MySQL wire protocol, sans-I/O: bytes in, events out. Nothing here may import asyncio."""
