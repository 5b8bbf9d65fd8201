"""The demo prompt that `promptgate serve --dev` seeds, and the commands it prints."""

from __future__ import annotations

from promptgate.chat import ModelParameters, Role
from promptgate.errors import AlreadyExists, NotFound
from promptgate.prompts.catalog import PromptCatalog
from promptgate.prompts.model import InputType, InputVariable, PromptSpec, TemplateMessage

DEMO_PROMPT = "demo"

DEMO_SPEC = PromptSpec(
    messages=(
        TemplateMessage(Role.SYSTEM, "You are a concise assistant for {{ audience }}."),
        TemplateMessage(Role.USER, "Answer in one sentence: {{ question }}"),
    ),
    model="mock-1",
    provider="mock",
    parameters=ModelParameters(temperature=0.2, max_tokens=200),
    input_variables=(
        InputVariable("question", InputType.STRING, "What to answer."),
        InputVariable("audience", InputType.STRING, "Who reads the answer.", True, "engineers"),
    ),
)


async def seed_demo(catalog: PromptCatalog, workspace: str) -> bool:
    """Create the demo prompt with version 1 tagged production; False if it exists."""
    try:
        await catalog.get_prompt(workspace, DEMO_PROMPT)
        return False
    except NotFound:
        pass
    try:
        await catalog.create_prompt(
            workspace, DEMO_PROMPT, "A demo prompt on the mock provider.", {}
        )
    except AlreadyExists:  # another replica seeded it first
        return False
    await catalog.create_version(
        workspace, DEMO_PROMPT, DEMO_SPEC, "First version.", ["production"]
    )
    return True


def demo_commands(address: str, key: str | None) -> str:
    """Copy-paste grpcurl commands against ``address`` with API key ``key``."""
    auth = f"-H 'authorization: Bearer {key or '<your API key>'}'"
    execute = (
        '{"prompt": "demo", "inputs": [{"name": "question", '
        '"string_value": "What is promptgate?"}]}'
    )
    inline = (
        '{"inline_prompt": {"model": "mock-1", "prompt": "Say hello to {{ name }}"}, '
        '"inputs": [{"name": "name", "string_value": "Ada"}]}'
    )
    return "\n".join(
        [
            "Try it (grpcurl, plaintext, reflection):",
            f"  grpcurl -plaintext {address} list",
            f"  grpcurl -plaintext {address} describe promptgate.v1.ExecutionService",
            f"  grpcurl -plaintext {auth} -d '{execute}' {address} promptgate.v1.ExecutionService/ExecutePrompt",
            f"  grpcurl -plaintext {auth} -d '{execute}' {address} promptgate.v1.ExecutionService/ExecutePromptStream",
            f"  grpcurl -plaintext {auth} -d '{inline}' {address} promptgate.v1.ExecutionService/ExecutePrompt",
            f'  grpcurl -plaintext {auth} -d \'{{"prompt": "demo"}}\' {address} promptgate.v1.PromptService/GetPrompt',
        ]
    )
