"""Instructor tools: make exercises from masters (`labkit assign`) and grade submissions (`labkit grade`)."""

__all__: list[str] = []
