"""The tests' own layout (docs/testing.md, "How the tests are laid out"): every test file in one of
the three kinds, the unit tests in folders that mirror the package, and names that stay importable
without packages."""

from collections import Counter

from conftest import ROOT

TESTS = ROOT / "tests"
KINDS = ("unit", "e2e", "architecture")


def test_every_test_file_is_a_unit_an_end_to_end_or_an_architecture_test():
    outside = [p.relative_to(TESTS).as_posix() for p in TESTS.rglob("test_*.py")
               if p.relative_to(TESTS).parts[0] not in KINDS]
    assert outside == []


def test_the_unit_tests_folders_mirror_the_package():
    folders = [p.relative_to(TESTS / "unit") for p in (TESTS / "unit").rglob("*") if p.is_dir()
               and p.name != "__pycache__"]
    assert folders, "tests/unit has no folder"
    assert [f.as_posix() for f in folders if not (ROOT / "sgdtune" / f / "__init__.py").exists()] == []


def test_test_file_names_are_unique_and_no_folder_is_a_package():
    # No __init__.py: pytest imports each test file by its name alone, with its folder on sys.path,
    # so two files of one name would collide.
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [name for name, n in names.items() if n > 1] == []
    assert [p.relative_to(TESTS).as_posix() for p in TESTS.rglob("__init__.py")] == []
