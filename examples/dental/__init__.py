"""Bright Smile Dental: verify a patient, find and move appointments, confirm by webhook."""
