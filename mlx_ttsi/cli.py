"""The `mlx-ttsi` command: a thin click layer over the library.

Answers go to stdout, progress to stderr. Options come from flags > environment (MLX_TTSI_*) >
the config file (`mlx-ttsi config-path`) > defaults.
"""

import json
import os
import sys
import time
from pathlib import Path

import click

from .errors import RequestError, TTSIError

EMBEDDED = "smollm2-135m"
MODES = ["auto", "base", "ttsi", "ttd", "ticl"]


def model_option(f):
    return click.option(
        "-m", "--model", default=EMBEDDED, show_default=True, envvar="MLX_TTSI_MODEL",
        help="Embedded model name, .gguf file, mlx-lm directory or Hugging Face repo id.",
    )(f)


def adaptation_options(f):
    """Options shared by ask, eval and serve: how and when to self-improve."""
    options = [
        click.option("--threshold", type=click.FloatRange(0, 1), default=0.95, show_default=True,
                     envvar="MLX_TTSI_THRESHOLD", help="Uncertain when the candidate margin is below this (tau)."),
        click.option("--examples", "-k", type=click.IntRange(1, 64), default=1, show_default=True,
                     envvar="MLX_TTSI_EXAMPLES", help="Synthetic examples per adapted request (K)."),
        click.option("--teacher", envvar="MLX_TTSI_TEACHER",
                     help="TT-D teacher: a model (as --model) or an OpenAI-compatible base URL."),
        click.option("--teacher-model", default="gpt-5-mini", show_default=True, envvar="MLX_TTSI_TEACHER_MODEL",
                     help="Model name sent to a teacher URL."),
        click.option("--candidates", type=click.Choice(["name", "call"]), default="name", show_default=True,
                     help="Candidate actions scored for uncertainty: tool names or whole calls."),
        click.option("--norm", type=click.Choice(["mean", "sum"]), default="mean", show_default=True,
                     help="Length normalisation of candidate log-likelihoods."),
        click.option("--max-calls", type=click.IntRange(1, 16), default=1, show_default=True,
                     help="Most tool calls in one answer."),
        click.option("--epochs", type=click.IntRange(1, 100), default=5, show_default=True, help="LoRA epochs."),
        click.option("--lr", type=float, default=1e-4, show_default=True, help="LoRA learning rate."),
        click.option("--rank", type=click.IntRange(1, 256), default=8, show_default=True, help="LoRA rank."),
        click.option("--precision", type=click.Choice(["auto", "native", "float32", "float16", "bfloat16"]),
                     default="auto", show_default=True, envvar="MLX_TTSI_PRECISION",
                     help="Weights dtype: auto = float32 on CPU, the model's own on a GPU."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def build_agent(model, precision, teacher, teacher_model, **settings):
    """Load the model and make an Agent from CLI option values."""
    from .adaptation import LoRASettings
    from .agent import Agent, Settings

    lora = LoRASettings(rank=settings.pop("rank"), epochs=settings.pop("epochs"), learning_rate=settings.pop("lr"))
    return Agent.load(
        model, precision=precision, settings=Settings(lora=lora, **settings),
        teacher=teacher, teacher_model=teacher_model, api_key=os.environ.get("MLX_TTSI_TEACHER_API_KEY"),
    )


def progress_printer(quiet):
    def report(phase, seconds, detail=""):
        if not quiet:
            click.echo(f"{phase:<10} {seconds:7.2f}s  {detail}".rstrip(), err=True)

    return report


def read_json_file(path, what):
    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text()
    except OSError as error:
        raise RequestError(f"cannot read {what} file {path}: {error.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestError(f"{what} file {path} is not valid JSON: {error.msg} (line {error.lineno})") from None


class UserError(click.ClickException):
    """A TTSIError shown as one line, exit status 1."""

    def show(self, file=None):
        click.echo(f"Error: {self.message}", err=True)


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TTSIError as error:
            raise UserError(str(error)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlx-ttsi")
def cli():
    """LLM agents that improve themselves at test time, on MLX."""


@cli.command()
@click.argument("request", required=False)
@click.option("--tools", "-t", "tools_file", type=click.Path(dir_okay=False), help="JSON file of tool specs.")
@click.option("--messages", "messages_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="JSON file with a conversation (a list of messages, or {messages, tools}).")
@model_option
@click.option("--mode", type=click.Choice(MODES), default="auto", show_default=True, envvar="MLX_TTSI_MODE",
              help="auto: adapt only when uncertain; ttsi/ttd/ticl: always use that method; base: never.")
@adaptation_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the full result.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def ask(request, tools_file, messages_file, model, mode, precision, teacher, teacher_model, seed, as_json, quiet,
        **settings):
    """Answer REQUEST, self-improving first when the model is unsure."""
    from .tools import load_tools, parse_tools

    messages, tools = None, None
    if messages_file:
        data = read_json_file(messages_file, "messages")
        messages = data.get("messages") if isinstance(data, dict) else data
        if isinstance(data, dict) and data.get("tools") and not tools_file:
            tools = parse_tools(data["tools"])
        if request:
            raise click.UsageError("give either REQUEST or --messages, not both")
    elif request is None or not request.strip():
        raise RequestError("the request is empty: give REQUEST or --messages FILE")
    if tools_file:
        tools = load_tools(tools_file)
    if mode == "ttd" and not teacher:
        raise TTSIError("--mode ttd needs --teacher (a model or an OpenAI-compatible URL)")
    report = progress_printer(quiet)
    started = time.perf_counter()
    agent = build_agent(model, precision, teacher, teacher_model, mode=mode, seed=seed, **settings)
    report("loading", time.perf_counter() - started, agent.name)
    answer = agent.ask(request, tools=tools, messages=messages, progress=report)
    if as_json:
        click.echo(json.dumps(answer.as_dict(), ensure_ascii=False))
    elif answer.tool_calls:
        for call in answer.tool_calls:
            click.echo(json.dumps(call, ensure_ascii=False))
    else:
        click.echo(answer.answer)


@cli.command("config-path")
def config_path_command():
    """Print where the config file is read from."""
    from .settings import config_path

    click.echo(str(config_path()))


def main(argv=None):
    """Entry point; the config file supplies option defaults for every command."""
    from .settings import load_config

    try:
        config = load_config()
    except TTSIError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(1)
    cli.main(args=argv, prog_name="mlx-ttsi", default_map={name: config for name in cli.commands})
