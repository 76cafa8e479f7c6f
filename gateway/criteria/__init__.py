"""Pluggable scorers for `op-criteria` (reward models, LLM judges, rules): built with the gateway issue.

May import only criteria.base, formats, protocol and reward_serving.protocol (DESIGN.md).
"""
