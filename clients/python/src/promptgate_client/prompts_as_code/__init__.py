"""Prompts as code: prompt, partial and chain files in a folder (e.g. in git) pushed
to and pulled from a promptgate server over gRPC, with an API key like any client.

- ``folder``: the folder layout (which file is what);
- ``files``: the prompt file format (one prompt per YAML file);
- ``partial_files``: the partial file format (YAML, or ``.jinja`` for the content);
- ``chain_files``: the chain file format (one stored chain per YAML file);
- ``yaml_text``: strict YAML reading, deterministic writing;
- ``messages``: YAML data to protobuf messages and back, strictly;
- ``partial_plan``: what a push would change in partials, and applying it;
- ``plan``: what a push would change in prompts (create / new version /
  unchanged / tag moves, with the server's breaking-change check, after the
  partial changes), and applying it;
- ``chain_plan``: what a push would change in chains (after the prompt
  changes), and applying it;
- ``report``: the plan as text;
- ``pull``: prompts, partials and chains from the server into files;
- ``cli``: ``promptgate prompts push|pull DIR`` (also ``python -m
  promptgate_client.prompts_as_code``).
"""
