"""Values a tool returns: the call that fetches one comes before the call that passes it.

A call may need a value that only another tool gives: API-Bank's `AddAlarm` takes a `token` that
`GetUserToken` returns. A model that has not called the provider yet writes something else there (the
username, "your_token"). When the tools declare what they return (`Tool.returns`: MCP's
`outputSchema`, or `x-returns`) the self-check calls the provider first:

- `needed_provider`: the first call passes a required value that another tool returns and names
  (its name or description says the value's words: "Get the user token", not `DeleteAccount`, whose
  `status` is no input of anything), and no tool returning it has been called in the conversation;
- `supplies`: the provider's own call is made of what the conversation states (every required value),
  and the first call's value was one of the provider's own (a username passed as a token) or one
  that neither the user nor a tool gave (the assistant's own "your token" gives none).

The answer is then the provider's call alone: what needs its result waits for it.
"""

import re

from .self_check import context_text, given_text, stated_in


def needed_provider(calls, tools, made):
    """(the key, the tool that returns and names it) for the first call's first required value that
    another tool fetches, when no tool returning it has been called (`made`: the conversation's calls);
    else None."""
    if not calls:
        return None
    by_name = {tool.name: tool for tool in tools}
    call, called = calls[0], {made_call.get("name") for made_call in made}
    tool = by_name.get(call["name"])
    for key in tool.required if tool else ():
        returning = [t for t in tools if key in t.returns and t.name != tool.name]
        if any(t.name in called for t in returning):
            continue
        named = [t for t in returning if _words(key) <= _words(t.name + " " + t.description)]
        if named:
            return key, named[0]
    return None


def _words(text):
    # lower-case words, camelCase and snake_case split: "GetUserToken" -> {"get", "user", "token"}
    return set(re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text).lower()))


def supplies(provider_calls, calls, key, tool, messages):
    """Whether the provider's (labelled) call can stand for `calls`: one call of `tool` whose required
    values the conversation all states, where the value `calls` passed for `key` is one of its own or
    one no one gave (the assistant saying "I need your token" gives no "your_token": given_text)."""
    if len(provider_calls) != 1 or provider_calls[0]["name"] != tool.name:
        return False
    arguments = provider_calls[0]["arguments"]
    context = context_text(messages)
    if not all(key_ in arguments and stated_in(arguments[key_], context) for key_ in tool.required):
        return False
    value = calls[0]["arguments"].get(key)
    own = {str(v).strip().lower() for v in arguments.values()}
    return value is None or not stated_in(value, given_text(messages)) or str(value).strip().lower() in own
