"""rewardgate's gateway package: the shared data format, and (later) the OpenAI-compatible proxy.

Nothing happens at import: no env reads, I/O, or heavy imports here.
"""
