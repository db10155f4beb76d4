"""Media plane: G.711, RTP, jitter buffer, pacing, DTMF, resampling, recording."""
