"""tffmt.py against layouts terraform fmt is known to write (hclwrite's rules)."""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tffmt import formatted  # noqa: E402


class Layout(unittest.TestCase):
    def test_formatted_input_is_kept(self):
        text = '''resource "aws_instance" "a" {
  ami           = "ami-1"
  instance_type = "t3.micro" # small

  tags = {
    Name = "a"
  }
  user_data = jsonencode({
    a = 1
  })
}
'''
        self.assertEqual(formatted(text), text)

    def test_equals_aligned_over_a_run_of_one_line_attributes(self):
        self.assertEqual(formatted('x {\na = 1\nlonger_name = "v"\n\nb = 2\n}\n'),
                         'x {\n  a           = 1\n  longer_name = "v"\n\n  b = 2\n}\n')

    def test_a_multi_line_value_is_not_aligned_and_ends_the_run(self):
        self.assertEqual(formatted('x {\n  name = "n"\n  assume_role_policy = jsonencode({\n    V = 1\n  })\n  z = 2\n}\n'),
                         'x {\n  name = "n"\n  assume_role_policy = jsonencode({\n    V = 1\n  })\n  z = 2\n}\n')

    def test_indentation_follows_the_lines_that_open_brackets(self):
        self.assertEqual(formatted('a = merge([\nfor r in x : { k = r }\n]...)\nb {\n    c {\nd = "${x["k"]}"\n}\n}\n'),
                         'a = merge([\n  for r in x : { k = r }\n]...)\nb {\n  c {\n    d = "${x["k"]}"\n  }\n}\n')

    def test_trailing_comments_of_consecutive_lines_aligned(self):
        self.assertEqual(formatted('x {\n  a = 1 # one\n  bb = 22 # two\n}\n'),
                         'x {\n  a  = 1  # one\n  bb = 22 # two\n}\n')

    def test_comparison_operators_are_not_assignments(self):
        self.assertEqual(formatted('x {\n  c = a == b ? 1 : 2\n  cc = a >= b\n}\n'),
                         'x {\n  c  = a == b ? 1 : 2\n  cc = a >= b\n}\n')

    def test_trailing_whitespace_and_final_newline(self):
        self.assertEqual(formatted('x {  \n  a = 1\n}'), 'x {\n  a = 1\n}\n')


if __name__ == "__main__":
    unittest.main()
