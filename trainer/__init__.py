"""rewardgate's reward-model trainer: preference JSONL -> a Bradley-Terry reward model directory.

Imports only `gateway.formats` from the rest of the project (DESIGN.md import rules).
"""
