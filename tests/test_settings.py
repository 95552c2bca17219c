from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_ttsi.cli import cli
from mlx_ttsi.errors import TTSIError
from mlx_ttsi.server import APIError, _ttsi_options
from mlx_ttsi.settings import BY_NAME, OPTIONS, LoRASettings, Settings, markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_carries_the_current_settings_table():
    assert markdown_table() in README.read_text()


def test_settings_defaults_come_from_the_table():
    settings = Settings()
    for option in OPTIONS:
        holder = settings.lora if hasattr(LoRASettings, option.name) and option.name not in vars(Settings()) else settings
        assert getattr(holder, option.name) == option.default, option.name


@pytest.mark.parametrize("name, bad", [("examples", 17), ("threshold", 1.5), ("mode", "fast"), ("max_tokens", 0)])
def test_cli_server_and_settings_refuse_the_same_values(name, bad):
    option = BY_NAME[name]
    with pytest.raises(TTSIError):
        option.check(bad)
    if option.request:
        with pytest.raises(APIError) as error:
            _ttsi_options({name: bad})
        assert error.value.status == 400 and error.value.param == f"ttsi.{name}"
    flag = option.cli_flag.split("/")[0]
    result = CliRunner().invoke(cli, ["ask", "hi", flag, str(bad)])
    assert result.exit_code == 2 and flag in result.output


def test_top_of_each_range_is_accepted_everywhere():
    top = BY_NAME["examples"].high
    assert _ttsi_options({"examples": top}) == {"examples": top}
    assert Settings(examples=top).check().examples == top
    with pytest.raises(TTSIError):
        Settings(examples=top + 1).check()
