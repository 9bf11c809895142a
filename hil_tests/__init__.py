"""Hardware-in-the-loop tests of the serial bridge (a package, so its conftest does not shadow tests/conftest)."""
