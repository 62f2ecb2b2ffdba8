"""What a bad CLI input must give: one line on stderr, no traceback."""


def one_line_error(err: str) -> str:
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err
