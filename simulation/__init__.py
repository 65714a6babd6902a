"""SUMO harness: scenarios, SUMO sessions, KPIs and episode runs."""
