"""What the gcapi scripts share: their checks, and polling the sandbox with a deadline."""

import time

DEADLINE_S = 30


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def poll(fetch, done, failure):
    """Call `fetch` until `done` holds for what it returned, and return that; past DEADLINE_S, raise
    AssertionError with `failure` of the last answer."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        answer = fetch()
        if done(answer):
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(failure(answer))
        time.sleep(0.1)
