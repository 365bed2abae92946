"""The admin port: MySQL-protocol console for operators."""
