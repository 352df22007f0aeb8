"""What every page of the app shares: the server client, the dialog manager, the voice, and what the
server can do (read once from its reflection and health services when the app is built)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ui.client import CAPTION_SERVICE, DIAGNOSIS_SERVICE, NuiClient, NuiError
from ui.dialog import DialogManager
from ui.tts import Speaker, SynthesisError


@dataclass
class AppContext:
    client: NuiClient
    manager: DialogManager
    speaker: Speaker | None
    services: list[str]
    streaming: bool  # the server has a streaming speech model
    free_text: bool  # the diagnosis service reads sentences
    captions: bool  # the server offers the Captioner service
    diagnosis: bool
    notice: str  # the symptom checker's notice, as the server words it
    metrics_url: str | None = None

    @staticmethod
    def connect(client: NuiClient, speaker: Speaker | None, metrics_url: str | None = None) -> AppContext:
        services = client.services()
        captions = client.has_captions()
        diagnosis = DIAGNOSIS_SERVICE in services
        notice = ""
        if diagnosis:
            try:
                notice = client.diagnose().notice
            except NuiError:
                diagnosis = False
        free_text = diagnosis and client.reads_free_text()
        return AppContext(client, DialogManager(client, free_text=free_text, captions=captions), speaker,
                          services, streaming=client.has_streaming(), free_text=free_text,
                          captions=captions and CAPTION_SERVICE in services, diagnosis=diagnosis, notice=notice,
                          metrics_url=metrics_url)

    def speak(self, text: str) -> tuple[int, np.ndarray] | None:
        """The reply as audio for the page, or None without a TTS engine (the text is still shown)."""
        if self.speaker is None:
            return None
        try:
            return self.speaker.say(text)
        except SynthesisError:
            return None
