"""Loaded by schemathesis (SCHEMATHESIS_HOOKS) when test_api_contract runs it.

One check of our own, beside every built-in one. positive_data_acceptance
takes 2xx, 404 and 409 as the answers to a schema-valid request; this API
also refuses some schema-valid requests with 400 or 422 for reasons no
schema can state, because they depend on what happened before:

- 422 idempotency-key-reused: the key was sent before with another request
  (the IETF Idempotency-Key draft's status for it);
- 400 naming field "cursor": a cursor is a token the API hands out; any
  other string is refused (the document says so);
- 422 with a "rule": the engine refused the command for what it names or for
  a relation between fields (a gateway outside the network's CIDR), or
  "validation" (a zone without the physical network a default needs).

The test lets positive_data_acceptance take 400 and 422 and this check
takes over: any other 400 or 422 to a schema-valid request (a body the
decoder refuses, a query parameter the document allows) fails the run.
"""

from __future__ import annotations

import json

import schemathesis

STATEFUL_REFUSALS = {
    "urn:cloudengine:problem:idempotency-key-reused",
    "urn:cloudengine:problem:validation",
}


@schemathesis.check
def refusal_of_valid_data_names_state(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code not in (400, 422):
        return None
    problem = json.loads(response.content)
    if problem.get("rule") or problem.get("type") in STATEFUL_REFUSALS:
        return None
    if response.status_code == 400 and problem.get("field") == "cursor":
        return None
    raise AssertionError(
        f"a schema-valid request was refused ({response.status_code}): {problem.get('detail')}"
    )
