"""The configuration schema: one model class per top-level section.

Adding a section (``speech:``, ``dialog:``...) is one `Section` subclass plus one field on
`Config`; validation, line-numbered errors and the reference table follow from the model.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from agentd import __version__
from agentd.config.validate import validate_document
from agentd.config.values import (
    FilePath,
    HeaderText,
    HostPortValue,
    HostValue,
    Integer,
    LocalAddress,
    NetworkValue,
    Number,
    Section,
    SipUser,
    TransferTarget,
    TypeName,
    blame,
)

# After the config parts above: agentd.dialog.policy imports them (see agentd/dialog/__init__).
from agentd.dialog.policy import DialogConfig  # noqa: E402
from agentd.service.config import ServiceConfig  # noqa: E402

DtmfKey = Annotated[
    Literal["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "#"], TypeName("DTMF key")
]
Codec = Literal["PCMU", "PCMA"]


def _derived(text: str) -> Any:
    """Field metadata for an optional key whose default is computed from other keys."""
    return {"default_text": text}


class RateLimitConfig(Section):
    """Token bucket applied per source address that is not in trusted_sources."""

    per_second: Number = Field(10.0, gt=0, le=10_000, description="Sustained requests per second.")
    burst: Integer = Field(20, ge=1, le=100_000, description="Requests allowed in one burst.")


class SipConfig(Section):
    """Registration with the PBX and who may call us."""

    registrar: HostPortValue = Field(
        description="PBX registrar to REGISTER with (port defaults to 5060; IPv6 as [addr]:port)."
    )
    transport: Literal["udp", "tcp"] = Field("udp", description="SIP transport.")
    extension: SipUser = Field(description="User part we register as (our extension).")
    # Digest user names may carry '@' and the like, so any one-line text is allowed.
    auth_user: HeaderText | None = Field(
        None,
        description="Digest authentication user name.",
        json_schema_extra=_derived("extension"),
    )
    password: SecretStr | None = Field(
        None, description="Digest password (exactly one of password and password_file)."
    )
    password_file: FilePath | None = Field(
        None,
        description="File holding the password, read at start-up and stripped; "
        "relative to the config file.",
    )
    domain: HostValue | None = Field(
        None, description="SIP domain / digest realm.", json_schema_extra=_derived("registrar host")
    )
    local_address: LocalAddress = Field(
        "127.0.0.1", description="IP address to bind and advertise."
    )
    local_port: Integer = Field(
        5060, ge=0, le=65535, description="Local SIP port (0 = any free port)."
    )
    register_expires: Integer = Field(
        300, ge=30, le=86_400, description="Requested registration lifetime in seconds."
    )
    trusted_sources: tuple[NetworkValue, ...] | None = Field(
        None,
        description="CIDRs allowed to send INVITEs; unset means the registrar's address(es), "
        "resolved at start-up when the registrar is a host name.",
        json_schema_extra=_derived("registrar address"),
    )
    max_calls: Integer = Field(
        4, ge=1, le=256, description="Concurrent calls; more get 486 Busy Here."
    )
    user_agent: HeaderText = Field(f"agentd/{__version__}", description="User-Agent header value.")
    rate_limit: RateLimitConfig = Field(
        default_factory=RateLimitConfig, description="Request limit for untrusted sources."
    )
    session_timer: Integer | None = Field(
        None, ge=90, le=86_400, description="RFC 4028 session interval in seconds; unset = off."
    )
    display_name: HeaderText | None = Field(None, description="Display name in From/Contact.")

    @field_validator("password", mode="before")
    @classmethod
    def _numeric_password_as_text(cls, value: Any) -> Any:
        # The loader reads only leading-zero-free decimals as ints, so this is lossless.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @property
    def registrar_network(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The registrar as a one-address network, or () when it is a host name."""
        if not self.registrar.host_is_ip:
            return ()
        return (ipaddress.ip_network(self.registrar.host),)

    @model_validator(mode="after")
    def _resolve(self) -> SipConfig:
        if self.password is not None and self.password_file is not None:
            raise blame("password_file", "give either password or password_file, not both")
        if self.password is None and self.password_file is None:
            raise blame("password", "required: give password or password_file")
        updates: dict[str, Any] = {}
        if self.password_file is not None:
            updates["password"] = SecretStr(_read_password_file(self.password_file))
        elif self.password is not None and not self.password.get_secret_value():
            raise blame("password", "must not be empty")
        if self.auth_user is None:
            updates["auth_user"] = self.extension
        if self.domain is None:
            updates["domain"] = self.registrar.host
        if self.trusted_sources is None and self.registrar.host_is_ip:
            updates["trusted_sources"] = self.registrar_network
        return self.model_copy(update=updates) if updates else self


def _read_password_file(path: Path) -> str:
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise blame("password_file", f"cannot read password file '{path}': {reason}") from None
    if not secret:
        raise blame("password_file", f"password file '{path}' is empty")
    return secret


class MediaConfig(Section):
    """RTP ports and codecs."""

    rtp_port_min: Integer = Field(
        10000,
        ge=1024,
        le=65534,
        description="Lowest RTP port (even; RTCP uses the odd port above).",
    )
    rtp_port_max: Integer = Field(
        20000, ge=1026, le=65534, description="End of the RTP port range (even, exclusive)."
    )
    codecs: tuple[Codec, ...] = Field(
        ("PCMU", "PCMA"), min_length=1, description="Codecs to offer, in order of preference."
    )
    dtmf_payload_type: Integer = Field(
        101, ge=96, le=127, description="RTP payload type of telephone-event (RFC 4733)."
    )
    jitter_min_ms: Integer = Field(
        40, ge=20, le=200, description="Initial jitter buffer depth in ms."
    )
    jitter_max_ms: Integer = Field(
        120, ge=20, le=200, description="Largest jitter buffer depth in ms."
    )

    @field_validator("codecs", mode="before")
    @classmethod
    def _upper_codecs(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [item.upper() if isinstance(item, str) else item for item in value]
        return value

    @field_validator("codecs")
    @classmethod
    def _no_duplicate_codecs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({codec for codec in value if value.count(codec) > 1})
        if repeated:
            raise ValueError(f"codec listed twice: {', '.join(repeated)}")
        return value

    @field_validator("rtp_port_min", "rtp_port_max")
    @classmethod
    def _even_port(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"expected an even port number, got {value}")
        return value

    @model_validator(mode="after")
    def _check_ranges(self) -> MediaConfig:
        if self.rtp_port_min >= self.rtp_port_max:
            raise blame(
                "rtp_port_max",
                f"must be greater than rtp_port_min ({self.rtp_port_min}), got {self.rtp_port_max}",
            )
        if self.jitter_min_ms > self.jitter_max_ms:
            raise blame(
                "jitter_max_ms",
                f"must be at least jitter_min_ms ({self.jitter_min_ms}), got {self.jitter_max_ms}",
            )
        return self

    @property
    def rtp_port_pairs(self) -> int:
        """How many RTP/RTCP port pairs the range holds."""
        return (self.rtp_port_max - self.rtp_port_min) // 2


class AppConfig(Section):
    """The line-test call handler used until the AI agent exists."""

    mode: Literal["echo", "playback"] = Field(
        "echo", description="echo: send the caller's audio back; playback: play playback_file."
    )
    echo_delay_ms: Integer = Field(200, ge=0, le=5000, description="Echo delay in ms.")
    playback_file: FilePath | None = Field(
        None,
        description="WAV file to play in playback mode (required then); "
        "relative to the config file.",
    )
    dtmf_transfer: dict[DtmfKey, TransferTarget] = Field(
        default_factory=dict,
        description='DTMF key ("0"-"9", "*", "#") to transfer target (extension or SIP URI).',
    )

    @field_validator("playback_file")
    @classmethod
    def _playback_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: '{value}'")
        return value

    @field_validator("dtmf_transfer", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        # Unquoted `5:` is an int key in YAML; "*" and "#" must be quoted anyway.
        if isinstance(value, dict):
            return {
                str(key) if isinstance(key, int) else key: target for key, target in value.items()
            }
        return value

    @model_validator(mode="after")
    def _playback_needs_file(self) -> AppConfig:
        if self.mode == "playback" and self.playback_file is None:
            raise blame("playback_file", "required when mode is playback")
        return self


class LogConfig(Section):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe level logged."
    )
    format: Literal["text", "json"] = Field(
        "text", description="text for people, json for collectors."
    )

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class VadSectionConfig(Section):
    """Voice activity detection: when the caller speaks and when the turn ends."""

    model: str = Field("silero-vad", description="VAD model id (see `agentd models list`).")
    threshold: Number = Field(
        0.5, gt=0, lt=1, description="Speech starts when the probability rises above this."
    )
    neg_threshold: Number = Field(
        0.35, gt=0, lt=1, description="Speech counts as silence again below this (hysteresis)."
    )
    min_speech_ms: Integer = Field(
        200, ge=0, le=5000, description="Shorter sounds (clicks, line noise) are not speech."
    )
    end_of_turn_ms: Integer = Field(
        400, ge=50, le=10_000, description="Silence after speech that ends the caller's turn."
    )
    threads: Integer = Field(1, ge=1, le=64, description="CPU threads for the VAD model.")

    @model_validator(mode="after")
    def _hysteresis(self) -> VadSectionConfig:
        if self.neg_threshold > self.threshold:
            raise blame(
                "neg_threshold",
                f"must not exceed threshold ({self.threshold}), got {self.neg_threshold}",
            )
        return self


class AsrSectionConfig(Section):
    """Speech recognition."""

    engine: Literal["whisper", "vosk"] = Field("whisper", description="ASR engine.")
    model: str = Field(
        "whisper-tiny-en", description="ASR model id; its engine must match `engine`."
    )
    threads: Integer = Field(1, ge=1, le=64, description="CPU threads for recognition.")
    final_beam_size: Integer = Field(
        5, ge=1, le=16,
        description="Whisper: beam width of final transcripts (partials stay greedy).",
    )
    prompt: str | None = Field(
        None,
        description="Whisper: text read as what was said before each utterance, to bias "
        "spelling and vocabulary (business and staff names, services); null = none.",
    )
    denoise: bool = Field(
        True, description="Whisper: subtract the line's steady background noise before decoding."
    )


class TtsSectionConfig(Section):
    """Speech synthesis."""

    engine: Literal["piper", "hibari", "espeak", "coqui"] = Field(
        "piper", description="TTS engine."
    )
    model: str | None = Field(
        "piper-en-us-joe-medium",
        description="TTS model id for piper and coqui (hibari/espeak need none).",
    )
    voice: str | None = Field(
        None, description="Voice name for hibari (default heart) and espeak (default en-us)."
    )
    threads: Integer = Field(1, ge=1, le=64, description="CPU threads for synthesis.")


class SpeechConfig(Section):
    """Listening and speaking: VAD, ASR and TTS engines and their models."""

    models_dir: FilePath | None = Field(
        None,
        description="Directory of fetched models; relative to the config file.",
        json_schema_extra=_derived(
            "$AGENTD_MODELS_DIR, else models/ of a source checkout, else /var/lib/agentd/models"
        ),
    )
    vad: VadSectionConfig = Field(default_factory=VadSectionConfig, description="VAD.")
    asr: AsrSectionConfig = Field(default_factory=AsrSectionConfig, description="ASR.")
    tts: TtsSectionConfig = Field(default_factory=TtsSectionConfig, description="TTS.")
    phrase_cache_dir: FilePath | None = Field(
        None,
        description="Directory caching synthesized fixed phrases; unset = no cache; "
        "relative to the config file.",
    )


class RecordsConfig(Section):
    """Call records (SQLite), optional call recordings, and how long both are kept."""

    database: FilePath | None = Field(
        None,
        description="SQLite file of call records (mode 0600); relative to the config file.",
        json_schema_extra=_derived("$STATE_DIRECTORY/calls.db, else /var/lib/agentd/calls.db"),
    )
    recording: bool = Field(
        False, description="Record each call as a stereo WAV (caller left, agent right)."
    )
    recordings_dir: FilePath | None = Field(
        None,
        description="Directory of call recordings; relative to the config file.",
        json_schema_extra=_derived("recordings/ next to the database"),
    )
    retention_days: Integer = Field(
        90,
        ge=0,
        le=36_500,
        description="Delete call records and recordings older than this (checked at start-up "
        "and daily); 0 keeps them for ever.",
    )

    @property
    def database_path(self) -> Path:
        from agentd.records.store import default_database_path

        return self.database if self.database is not None else default_database_path()

    @property
    def recordings_path(self) -> Path:
        if self.recordings_dir is not None:
            return self.recordings_dir
        return self.database_path.parent / "recordings"


class MetricsConfig(Section):
    """Prometheus metrics over HTTP (/metrics)."""

    port: Integer = Field(0, ge=0, le=65535, description="HTTP port for /metrics; 0 = off.")
    address: str = Field(
        "127.0.0.1",
        description="IP address to serve metrics on (0.0.0.0 or :: for every interface).",
    )

    @field_validator("address", mode="before")
    @classmethod
    def _ip_address(cls, value: Any) -> Any:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"expected an IP address, got {value!r}") from None


_DEFAULT_BACKCHANNELS = (
    "alright", "all right", "got it", "hmm", "i see", "mhm", "mm", "mm hm", "mm hmm", "mm-hm",
    "mm-hmm", "mmhmm", "ok", "okay", "right", "uh huh", "uh-huh", "uhhuh", "yeah",
)  # agentd.call.turns.DEFAULT_BACKCHANNELS (kept equal by tests/config; no import: no numpy)


class CallConfig(Section):
    """The AI call loop: fillers over dead air, keypad input, re-prompts and turn-taking.

    Defaults equal agentd.call.loop.CallLoopConfig and agentd.call.turns.TurnConfig.
    """

    fillers: tuple[HeaderText, ...] = Field(
        ("One moment.", "Let me check that."),
        max_length=16,
        description="Short phrases (synthesised at start-up) played over dead air while a "
        "reply or a tool is slow: the first after the caller's turn, the second during a "
        "tool; [] = none.",
    )
    filler_after_s: Number = Field(
        1.0, ge=0, le=10, description="Dead air after the caller's turn before a filler, in s."
    )
    tool_filler_after_s: Number = Field(
        0.3, ge=0, le=10, description="Dead air while a tool runs before a filler, in s."
    )
    max_fillers_per_turn: Integer = Field(
        2, ge=0, le=10, description="Most fillers in one reply; 0 = no fillers."
    )
    acknowledgements: tuple[HeaderText, ...] = Field(
        ("Sure.", "Okay."),
        max_length=16,
        description="Short words said at once at the end of the caller's turn when the "
        "reply is expected to be slow; [] = none.",
    )
    ack_when_content_after_s: Number | None = Field(
        0.5,
        ge=0,
        le=10,
        description="Acknowledge when the reply is expected this many s or more after the "
        "caller's turn (learnt per call); null = never.",
    )
    filler_after_ack_s: Number = Field(
        1.1, ge=0, le=10, description="Dead air after an acknowledgement before a filler, in s."
    )
    prefill: bool = Field(
        True,
        description="Let the LLM read the caller's words while they still speak (faster "
        "replies, more CPU).",
    )
    echo_guard: bool = Field(
        True,
        description="Ignore caller-side sound no louder than the echo of the agent's own "
        "voice (line echo must not cut the agent off); off for lines without echo.",
    )
    echo_max_delay_ms: Number = Field(
        200.0, ge=20, le=1000,
        description="Longest echo path the guard allows for (network + jitter buffer), in ms.",
    )
    dtmf_gap_s: Number = Field(
        1.5,
        gt=0,
        le=10,
        description="Key presses are collected until '#', a key the policy maps, or this gap "
        "in s.",
    )
    preroll_s: Number = Field(
        0.3,
        ge=0,
        le=1,
        description="Audio from before the VAD's speech onset given to the ASR, in s.",
    )
    reprompt_after_s: Number | None = Field(
        None,
        gt=0,
        le=120,
        description="Caller silence before the agent re-prompts, in s.",
        json_schema_extra=_derived("dialog policy's limits.silence_reprompt_seconds"),
    )
    fast_end_of_turn_s: Number | None = Field(
        0.2,
        ge=0.02,
        le=5,
        description="Silence that ends the turn early when the words so far end a sentence, "
        "in s; null = always wait for speech.vad.end_of_turn_ms.",
    )
    fast_end_min_words: Integer = Field(
        2,
        ge=1,
        le=10,
        description="Words the caller must have said for the early end of turn; fewer "
        "('Sorry,', 'Well,') wait for speech.vad.end_of_turn_ms.",
    )
    incomplete_hold_s: Number = Field(
        0.6,
        ge=0,
        le=5,
        description="Extra silence allowed when the words stop mid-sentence ('and', 'um'), "
        "in s.",
    )
    backchannel_max_s: Number = Field(
        0.8,
        gt=0,
        le=5,
        description="Caller speech over the agent longer than this (from its onset) is an "
        "interruption, never a backchannel, in s.",
    )
    hold_max_s: Number = Field(
        1.5,
        gt=0,
        le=10,
        description="Longest the agent stays paused for caller speech before it gives up the "
        "turn, in s.",
    )
    early_hold_s: Number | None = Field(
        0.06,
        ge=0.02,
        le=1,
        description="Pause the agent after this much caller speech, before the VAD confirms "
        "it (a burst it never confirms resumes the agent), in s; null = at the VAD's "
        "confirmation (speech.vad.min_speech_ms).",
    )
    backchannels: tuple[HeaderText, ...] = Field(
        _DEFAULT_BACKCHANNELS,
        max_length=200,
        description="Words the caller may say over the agent without interrupting it "
        "('uh-huh'); case and punctuation are ignored.",
    )

    @field_validator("fillers", "acknowledgements", "backchannels")
    @classmethod
    def _phrases(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for phrase in value:
            if not any(ch.isalnum() for ch in phrase):
                raise ValueError(f"expected a phrase with words, got {phrase!r}")
        repeated = sorted({phrase for phrase in value if value.count(phrase) > 1})
        if repeated:
            raise ValueError(f"listed twice: {', '.join(repr(p) for p in repeated)}")
        return value


class Config(Section):
    """The whole agentd configuration file."""

    sip: SipConfig = Field(description="SIP registration and call admission.")
    media: MediaConfig = Field(default_factory=MediaConfig, description="RTP media.")
    app: AppConfig = Field(default_factory=AppConfig, description="Line-test call handler.")
    log: LogConfig = Field(default_factory=LogConfig, description="Logging.")
    speech: SpeechConfig = Field(
        default_factory=SpeechConfig, description="Speech engines and models."
    )
    dialog: DialogConfig = Field(
        default_factory=DialogConfig,
        description="The AI agent's policy and LLM; absent: the line-test app answers.",
    )
    call: CallConfig = Field(
        default_factory=CallConfig,
        description="The AI call loop: fillers, keypad input, re-prompts, turn-taking.",
    )
    service: ServiceConfig = Field(
        default_factory=ServiceConfig, description="Running as a service (drain, pid file)."
    )
    records: RecordsConfig = Field(
        default_factory=RecordsConfig, description="Call records, recordings, retention."
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus metrics endpoint."
    )

    @model_validator(mode="after")
    def _enough_rtp_ports(self) -> Config:
        if self.media.rtp_port_pairs < self.sip.max_calls:
            raise blame(
                "media.rtp_port_max",
                f"RTP range {self.media.rtp_port_min}-{self.media.rtp_port_max} holds "
                f"{self.media.rtp_port_pairs} call(s) but sip.max_calls is {self.sip.max_calls}",
            )
        return self

    @classmethod
    def from_dict(
        cls, data: Any, source: str = "<string>", base_dir: Path | str | None = None
    ) -> Config:
        """Validate already-parsed data; raises ConfigError (without line numbers)."""
        return validate_document(cls, data, source=source, root=None, base_dir=base_dir)
