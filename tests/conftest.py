"""Shared fixtures: a private PostgreSQL cluster and real RTSP test cameras."""

pytest_plugins = ["fixtures_pg", "fixtures_cam"]
