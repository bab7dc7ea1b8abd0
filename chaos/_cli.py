"""The ``chaos`` command line: run programs under a failure schedule."""

from __future__ import annotations

import click


@click.group(help="Failure injection for ember clusters: run a program while its processes are killed.")
@click.version_option(package_name="ember-runtime")
def main() -> None:
    pass


if __name__ == "__main__":
    main()
