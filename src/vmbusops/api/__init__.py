"""The agent's HTTP API for runbooks (``vmbusops agent``).

app.py        routes under /v1, authentication and scope checks, problem details
service.py    the engine's jobs as the API sees them: submit, read, cancel
follow.py     a job's live records as Server-Sent Events, resumable by cursor
cursor.py     a follower's position: the last seq of each of the job's runs
broadcast.py  engine events fanned out to followers without ever blocking the engine
auth.py       principals (tokens, client certificates) and their scopes
server.py     one trio process: engine, scheduler and Hypercorn; readiness; shutdown
"""
