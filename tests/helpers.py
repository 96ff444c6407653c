"""Small test doubles shared by several test modules."""


class RowCollector:
    """Stands in for a results file: keeps the rows a writer adds and refuses a case id twice."""

    def __init__(self):
        self.cases = []

    def add_case(self, row):
        assert row["case"] not in {c["case"] for c in self.cases}
        self.cases.append(row)
