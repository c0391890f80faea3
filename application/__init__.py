"""Use cases: commands on the aggregates, access rules, and reads of the views."""
