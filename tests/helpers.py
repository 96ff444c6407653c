"""Small test doubles and inputs shared by several test modules."""


class RowCollector:
    """Stands in for a results file: keeps the rows a writer adds and refuses a case id twice."""

    def __init__(self):
        self.cases = []

    def add_case(self, row):
        assert row["case"] not in {c["case"] for c in self.cases}
        self.cases.append(row)


def tiny_suite(description: str, resolutions: list[str], methods: list[str], extra: str = "") -> str:
    """A suite file's text for a run of a few seconds on the CPU: one head of 16, fp32, 2 samples a case."""
    return (f'description = "{description}"\nresolutions = {resolutions!r}\ntext_tokens = 4\nheads = 1\n'
            f'head_dim = 16\ndtype = "float32"\n{extra}methods = {methods!r}\n'
            "[timing]\nwarmup_ms = 0\nmin_samples = 2\nmax_samples = 2\nbudget_ms = 1\nrounds = 1\n")
