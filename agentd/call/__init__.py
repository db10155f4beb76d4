"""The live call loop: turn-taking, barge-in, fillers, and the wiring of SIP, media, speech
and dialog into the phone agent (see `loop.CallLoop`)."""
