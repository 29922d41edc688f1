"""Random lab configs always end in one line naming the key, never a traceback."""
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab import config

scalars = st.one_of(st.text(max_size=20), st.integers(), st.floats(allow_nan=False), st.booleans(),
                    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
keys = st.sampled_from([k for sec in config.SCHEMA.values() for k in sec] + ["typo", "name", "bdf"])
sections = st.sampled_from(list(config.SCHEMA) + ["gust", "inventory"])
configs = st.dictionaries(sections, st.one_of(st.dictionaries(keys, scalars, max_size=6), scalars), max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_random_configs_give_one_line_errors(raw):
    try:
        config.from_dict(raw, Path("fuzz.toml"))
    except config.LabConfigError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith("fuzz.toml: key '"), msg


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_random_toml_text_never_tracebacks(text):
    p = Path("/tmp/acc-fuzz-lab.toml")
    p.write_text(text)
    try:
        config.load(p)
    except config.LabConfigError as e:
        assert "\n" not in str(e)
    finally:
        p.unlink(missing_ok=True)


def test_a_key_with_a_newline_is_shown_escaped_on_one_line():
    try:
        config.from_dict({"host": {"\n": 0}}, Path("fuzz.toml"))
    except config.LabConfigError as e:
        assert str(e).startswith("fuzz.toml: key 'host.\\n' is not a known key"), str(e)
    else:
        raise AssertionError("an unknown key was accepted")
