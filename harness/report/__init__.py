"""Leaderboard reports: records, sweep manifests and studies -> HTML, Markdown, CSV and plots."""
