"""Speech engines behind small interfaces: VAD, ASR, TTS (see interfaces.py)."""
