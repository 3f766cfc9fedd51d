"""``ascan generate <verb>``: train, sample, eval and export the generator (``argv`` starts with the verb)."""

from __future__ import annotations

from ascan.errors import UserError


def main(argv: list[str]) -> int:
    verb, rest = argv[0], argv[1:]
    if verb == "train":
        from ascan.generate import cli_train

        return cli_train.main(rest)
    if verb == "sample":
        from ascan.generate import cli_sample

        return cli_sample.main(rest)
    raise UserError(f"'ascan generate {verb}' is not built yet")
