"""The Redis balance store: Lua scripts that check and write in one atomic step."""
