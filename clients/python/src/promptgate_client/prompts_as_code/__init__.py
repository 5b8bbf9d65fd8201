"""Prompts as code: prompt files in a folder (e.g. in git) pushed to and pulled from
a promptgate server over gRPC, with an API key like any client.

- ``files``: the folder layout and the YAML format (one prompt per file);
- ``messages``: YAML data to protobuf messages and back, strictly;
- ``plan``: what a push would change (create / new version / unchanged / tag
  moves, with the server's breaking-change check), and applying it;
- ``pull``: prompts from the server into files;
- ``cli``: ``promptgate prompts push|pull DIR`` (also ``python -m
  promptgate_client.prompts_as_code``).
"""
