"""Sandbar's domain model: aggregates and their events. Imports nothing of ours."""
