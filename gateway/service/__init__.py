"""The services the HTTP layer calls: the chat pipeline (chat, with its frozen hand-offs and rendering), criteria
definitions and judging, datasets, feedback, and training jobs (run as trainer subprocesses). Services import the
store, the upstream and the criteria, never starlette or gateway.api.
"""
