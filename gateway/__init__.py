"""rewardgate's gateway: the OpenAI-compatible best-of-N proxy (gateway.proxy, wired by gateway.cli), its layers
(api -> service -> upstream, criteria, store), the shared vocabulary at this level (formats, protocol, config,
errors, metrics), and the reward-model server (gateway.reward_serving). Layout and layer rules: README "Layout".

Nothing happens at import: no env reads, I/O, or heavy imports here.
"""
