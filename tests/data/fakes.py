"""Test doubles shared by the data tests."""


class FakeDataset:
  """The part of datasets.Dataset that xsim uses: column_names and column access."""

  def __init__(self, columns):
    self.columns = columns
    self.column_names = list(columns)

  def __getitem__(self, name):
    return self.columns[name]
