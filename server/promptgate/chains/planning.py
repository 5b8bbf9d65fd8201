"""Chain planning: a chain spec and its inputs, checked before any step runs.

    the chain's inputs against its declarations (if any)
    -> each step: a valid, unique name; a target that can run (a stored prompt
       that exists and is not archived, or an inline prompt that validates);
       parameters; an output variable that is a new name
    -> every variable a step needs is a chain input or an earlier step's
       output, of a type that fits what the step declares
    -> the planned steps: which variables each takes and what type it yields

Every problem is collected into one INVALID_ARGUMENT (reason INVALID_CHAIN,
or INVALID_INPUT for the chain's own inputs) with a field violation each, so
a chain that cannot run is refused before anything is recorded or paid for.
A stored chain version is checked the same way when it is created, then
without inputs: names that no step yields are taken to be chain inputs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from promptgate.chains.model import ChainSpec, ChainStep
from promptgate.chat import ResponseFormatType, parameter_problems
from promptgate.errors import FieldViolation, InvalidArgument, RequestError
from promptgate.execution.model import InlineTarget, StoredTarget
from promptgate.execution.planning import ExecutorLimits
from promptgate.prompts.catalog import PromptCatalog
from promptgate.prompts.inputs import coerce, resolve_inputs
from promptgate.prompts.model import InputType, InputVariable, PromptInput, PromptSpec
from promptgate.prompts.partial_sets import PartialSet
from promptgate.prompts.templates import TemplateEngine
from promptgate.prompts.validation import (
    IDENTIFIER,
    ModelCheck,
    validate_spec,
    variable_problems,
)

MAX_STEPS = 32
STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """A checked step: the variables it takes, and the type of the variable it yields."""

    step: ChainStep
    takes: tuple[str, ...]
    yields: InputType


# A checked step target: its prompt, its declared variables (None: an inline
# prompt declaring none) and the partials it includes.
_Target = tuple[PromptSpec, tuple[InputVariable, ...] | None, PartialSet]


@dataclass(frozen=True, slots=True)
class _Source:
    """Where a variable comes from: a chain input (with its value, once known) or a step."""

    type: InputType
    step: str = ""
    value: PromptInput | None = None


def yielded_type(spec: PromptSpec) -> InputType:
    """The type of the variable a step running ``spec`` yields: JSON for JSON formats."""
    fmt = spec.response_format
    if fmt is not None and fmt.type is not ResponseFormatType.TEXT:
        return InputType.JSON
    return InputType.STRING


def _fits(declared: InputType, given: InputType) -> bool:
    """Whether a value of type ``given`` can fill a variable declared ``declared``.

    A JSON variable also takes text (parsed as JSON when the step runs),
    numbers and booleans, as prompt inputs do.
    """
    if declared is given:
        return True
    return declared is InputType.JSON and given is not InputType.CHAT_HISTORY


class ChainPlanner:
    """Checks chain specs and inputs; see the module docstring."""

    def __init__(
        self,
        *,
        prompts: PromptCatalog,
        templates: TemplateEngine,
        check_model: ModelCheck,
        limits: ExecutorLimits,
    ) -> None:
        self._prompts = prompts
        self._templates = templates
        self._check_model = check_model
        self._limits = limits

    def inputs(self, spec: ChainSpec, given: Sequence[PromptInput]) -> tuple[PromptInput, ...]:
        """The chain's inputs as the steps get them: checked against the chain's
        declarations (converted to the declared types, defaults added), or as given."""
        if len(given) > self._limits.max_inputs:
            raise InvalidArgument.field(
                "inputs", f"at most {self._limits.max_inputs} inputs", reason="INVALID_INPUT"
            )
        if not spec.input_variables:
            resolve_inputs(None, given)  # names present and unique
            return tuple(given)
        values = resolve_inputs(spec.input_variables, given)
        return tuple(
            PromptInput(v.name, v.type, values[v.name])
            for v in spec.input_variables
            if v.name in values
        )

    async def check(
        self,
        workspace: str,
        spec: ChainSpec,
        *,
        field: str,
        inputs: Sequence[PromptInput] | None,
        targets: dict[int, tuple[_Target | None, list[FieldViolation]]] | None = None,
    ) -> tuple[PlannedStep, ...]:
        """The planned steps of ``spec``; INVALID_ARGUMENT (INVALID_CHAIN) listing every problem.

        ``inputs`` are the chain's inputs (from ``inputs()``), or None when they
        are not known yet (a version being stored). ``targets`` keeps the checked
        step targets between calls on the same spec (a batch checks each item's
        inputs; its steps' prompts are resolved and validated once).
        """
        problems = variable_problems(spec.input_variables, f"{field}.input_variables")
        if not spec.steps:
            problems.append(FieldViolation(f"{field}.steps", "a chain needs at least one step"))
        if len(spec.steps) > MAX_STEPS:
            problems.append(FieldViolation(f"{field}.steps", f"at most {MAX_STEPS} steps"))
            raise InvalidArgument.of(problems, reason="INVALID_CHAIN")
        available: dict[str, _Source] = {}
        if inputs is not None:
            available = {i.name: _Source(i.type, value=i) for i in inputs}
        else:
            available = {v.name: _Source(v.type) for v in spec.input_variables}
        # Without declarations or inputs, the chain's input names are unknown.
        open_inputs = inputs is None and not spec.input_variables
        later = {s.output_variable: s.name for s in spec.steps}
        names: set[str] = set()
        planned: list[PlannedStep] = []
        for index, step in enumerate(spec.steps):
            path = f"{field}.steps[{index}]"
            later.pop(step.output_variable, None)
            problems.extend(self._naming_problems(step, path, names, available))
            if targets is not None and index in targets:
                checked, target_problems = targets[index]
            else:
                target_problems = []
                checked = await self._target(workspace, step, path, target_problems)
                if targets is not None:
                    targets[index] = (checked, target_problems)
            problems.extend(target_problems)
            yields = InputType.STRING
            if checked is not None:
                prompt, declared, partials = checked
                yields = yielded_type(prompt)
                takes, needs = self._takes(
                    step, path, prompt, declared, partials, available, later, open_inputs
                )
                problems.extend(needs)
                planned.append(PlannedStep(step, takes, yields))
            names.add(step.name)
            if step.output_variable and step.output_variable not in available:
                available[step.output_variable] = _Source(yields, step=step.name)
        if problems:
            raise InvalidArgument.of(problems, reason="INVALID_CHAIN")
        return tuple(planned)

    def _naming_problems(
        self, step: ChainStep, path: str, names: set[str], available: dict[str, _Source]
    ) -> list[FieldViolation]:
        problems: list[FieldViolation] = []
        if not STEP_NAME.fullmatch(step.name):
            problems.append(
                FieldViolation(
                    f"{path}.name",
                    "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                )
            )
        elif step.name in names:
            problems.append(FieldViolation(f"{path}.name", f"step {step.name!r} is named twice"))
        variable = step.output_variable
        if not IDENTIFIER.fullmatch(variable):
            problems.append(
                FieldViolation(
                    f"{path}.output_variable", f"{variable!r} is not a valid variable name"
                )
            )
        elif variable in available:
            source = available[variable]
            owner = f"the output of step {source.step!r}" if source.step else "a chain input"
            problems.append(
                FieldViolation(f"{path}.output_variable", f"{variable!r} is already {owner}")
            )
        if step.parameters is not None:
            problems.extend(
                FieldViolation(f, d)
                for f, d in parameter_problems(step.parameters, f"{path}.parameters")
            )
        return problems

    async def _target(
        self, workspace: str, step: ChainStep, path: str, problems: list[FieldViolation]
    ) -> _Target | None:
        """The step's prompt, its declared variables (None: an inline prompt declaring
        none) and the partials it includes."""
        target = step.target
        if isinstance(target, StoredTarget):
            if target.release_tag and target.version:
                problems.append(
                    FieldViolation(f"{path}.version", "give a release_tag or a version, not both")
                )
                return None
            try:
                resolved = await self._prompts.resolve(
                    workspace,
                    target.prompt,
                    tag=target.release_tag or self._limits.default_release_tag,
                    version=target.version,
                )
            except RequestError as exc:
                problems.append(FieldViolation(f"{path}.prompt", exc.message))
                return None
            spec = resolved.version.spec
            return spec, spec.input_variables, resolved.partials_of(resolved.version)
        assert isinstance(target, InlineTarget)
        spec = target.spec
        field = f"{path}.inline_prompt"
        await self._templates.prepare(m.template for m in spec.messages)
        try:
            # An inline prompt includes the latest version of each partial.
            partials = await self._prompts.partial_sets.for_spec(workspace, spec, field)
            validate_spec(
                spec,
                self._templates,
                field=field,
                check_model=self._check_model,
                declared_required=target.declared,
                partials=partials,
            )
        except InvalidArgument as exc:
            problems.extend(exc.violations)
            return None
        return spec, spec.input_variables if target.declared else None, partials

    def _takes(
        self,
        step: ChainStep,
        path: str,
        prompt: PromptSpec,
        declared: tuple[InputVariable, ...] | None,
        partials: PartialSet,
        available: dict[str, _Source],
        later: dict[str, str],
        open_inputs: bool,
    ) -> tuple[tuple[str, ...], list[FieldViolation]]:
        """The variables ``step`` takes, and the problems of what it needs."""
        if declared is None:
            # An inline prompt that declares nothing takes what its templates use.
            needs: dict[str, InputType | None] = {}
            for i, message in enumerate(prompt.messages):
                if message.chat_history_input:
                    needs[message.chat_history_input] = InputType.CHAT_HISTORY
                    continue
                for name in self._used(message.template, partials, f"{path}.messages[{i}]"):
                    needs.setdefault(name, None)
            variables = [(name, kind, False) for name, kind in sorted(needs.items())]
        else:
            variables = [(v.name, v.type, v.has_default) for v in declared]
        takes: list[str] = []
        problems: list[FieldViolation] = []
        for name, kind, optional in variables:
            source = available.get(name)
            if source is None:
                if name in later:
                    problems.append(
                        FieldViolation(
                            path,
                            f"needs {name!r}, the output of step {later[name]!r}, which runs later",
                        )
                    )
                elif not optional and not open_inputs:
                    problems.append(
                        FieldViolation(
                            path,
                            f"needs {name!r}, which is neither a chain input nor the output "
                            "of an earlier step",
                        )
                    )
                continue
            takes.append(name)
            problem = _mismatch(name, kind, source)
            if problem:
                problems.append(FieldViolation(path, problem))
        return tuple(takes), problems

    def _used(self, template: str, partials: PartialSet, field: str) -> set[str]:
        """The variables a template reads, with those of the partials it includes."""
        names = self._templates.names(template, field)
        reached = [
            self._templates.names(partials.sources[name], field)
            for name in partials.reachable(names.includes)
        ]
        known = names.assigned.union(*(n.assigned for n in reached))
        return set(names.variables).union(*(n.variables - known for n in reached))


def _mismatch(name: str, kind: InputType | None, source: _Source) -> str:
    """Why a variable from ``source`` cannot fill one declared ``kind``; "" if it can."""
    if kind is None:
        return ""
    if source.value is not None:
        try:
            coerce(InputVariable(name, kind), source.value)
        except ValueError as exc:
            return str(exc)
        return ""
    if _fits(kind, source.type):
        return ""
    origin = f"step {source.step!r} yields" if source.step else "the chain declares"
    return f"{name!r} is declared {kind.value} but {origin} {source.type.value}"
