"""``python -m promptgate_client.prompts_as_code push|pull DIR``: ``promptgate prompts``."""

import sys

from promptgate_client.prompts_as_code.cli import prompts_main

sys.exit(prompts_main(prog="python -m promptgate_client.prompts_as_code"))
