"""The voice assistant page: speak (or upload, or type) -> transcript -> dialog -> reply shown and spoken.

Endpoints (for gradio_client): `/ask` (typed text), `/hear_file` (an uploaded recording), `/hear`
(a whole microphone recording), `/set_picture` (the picture "what is in this picture?" refers to),
`/speak` (the last reply as audio: each reply's text shows first, its speech follows as a second step);
with a streaming server `/live_chunk` and `/live_stop` replace `/hear` (the microphone streams: the
interim transcript grows while the person talks).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from ui.audio import AudioProblem, prepare_audio
from ui.client import NuiError
from ui.context import AppContext
from ui.dialog import DialogState
from ui.images import ImageProblem, prepare_image
from ui.live import LiveSession

Chat = list[dict[str, str]]
Audio = tuple[int, np.ndarray] | None


def _said(chat: Chat | None, user: str, assistant: str) -> Chat:
    return [*(chat or []), {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def answer(ctx: AppContext, text: str, chat: Chat | None, state: DialogState) -> tuple[Chat, DialogState]:
    """The dialog's reply to `text`, added to the chat (`speak_last` then reads it aloud)."""
    reply = ctx.manager.handle(state, text)
    return _said(chat, text, reply.text), state


def hear(ctx: AppContext, recording: Any, chat: Chat | None, state: DialogState) -> tuple[str, Chat, DialogState]:
    """A whole recording (numpy from the microphone or a file path): transcribe, then answer."""
    try:
        clip = prepare_audio(recording)
        text = ctx.client.recognize(clip.wav).text
    except (AudioProblem, NuiError) as e:
        message = str(e) if isinstance(e, AudioProblem) else f"Sorry, the server could not transcribe that: {e.message}"
        return "", _said(chat, "(audio)", message), state
    if not text:
        message = "I heard sound but no words. Could you say that again, a little closer to the microphone?"
        return "", _said(chat, "(audio)", message), state
    return (text, *answer(ctx, text, chat, state))


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message as Gradio hands it back (a string, or a list of typed parts)."""
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content if isinstance(p, dict))


def speak_last(ctx: AppContext, chat: Chat | None) -> Audio:
    """The last assistant message, spoken (None without a TTS engine or a message)."""
    said = [m for m in chat or [] if m.get("role") == "assistant"]
    return ctx.speak(message_text(said[-1]).replace("%", " percent")) if said else None


def live_chunk(ctx: AppContext, chunk: Audio, session: LiveSession | None) -> tuple[str, LiveSession | None]:
    """One streamed microphone chunk: into the session's StreamingRecognize call; the interim transcript."""
    if chunk is None:
        return (session.interim if session else ""), session
    rate, samples = chunk
    if session is None or session.sample_rate_hz != rate:
        session = LiveSession(ctx.client, rate, streaming=True)
    session.feed(samples)
    return session.interim, session


def live_stop(ctx: AppContext, session: LiveSession | None, chat: Chat | None, state: DialogState
              ) -> tuple[str, Chat, DialogState, None]:
    """The person stopped: close the stream, answer its final transcript, forget the session."""
    if session is None:
        return "", _said(chat, "(audio)", "No audio arrived from the microphone."), state, None
    try:
        text = session.finish()
    except (AudioProblem, NuiError) as e:
        message = str(e) if isinstance(e, AudioProblem) else f"Sorry: {e.message}"
        return "", _said(chat, "(audio)", message), state, None
    return (text, *answer(ctx, text, chat, state), None)


def build(ctx: AppContext) -> None:
    state = gr.State(DialogState())
    live = gr.State(None)
    with gr.Row():
        with gr.Column(scale=3):
            chat = gr.Chatbot(label="Conversation", elem_id="assistant-chat", height=380)
            heard = gr.Textbox(label="Heard (live transcript)" if ctx.streaming else "Heard", interactive=False,
                               elem_id="assistant-transcript")
            with gr.Row():
                text = gr.Textbox(label="Type instead", placeholder="I have a headache and a fever", scale=4,
                                  elem_id="assistant-text")
                send = gr.Button("Send", variant="primary", scale=1, elem_id="assistant-send")
            voice = gr.Audio(label="Reply (spoken)", autoplay=True, interactive=False, elem_id="assistant-voice")
        with gr.Column(scale=2):
            mic = gr.Audio(sources=["microphone"], type="numpy", streaming=ctx.streaming, label="Speak",
                           elem_id="assistant-mic")
            upload = gr.Audio(sources=["upload"], type="filepath", label="...or upload a recording",
                              elem_id="assistant-upload")
            picture = gr.Image(sources=["upload", "webcam"], type="filepath", label="Picture to ask about",
                               elem_id="assistant-picture")
            gr.Markdown(("Live transcript: on (streaming model)." if ctx.streaming else
                         "Live transcript: off (the server has no streaming speech model); the recording is "
                         "transcribed when you stop.") +
                        ("" if ctx.speaker else " Spoken replies: off (install espeak-ng or flite)."))

    def ask(t: str, c: Chat | None, s: DialogState) -> tuple[Chat, DialogState, str]:
        return (*answer(ctx, t, c, s), "")

    def hear_any(recording: Any, c: Chat | None, s: DialogState) -> tuple[str, Chat, DialogState]:
        return hear(ctx, recording, c, s)

    def speak(c: Chat | None) -> Audio:
        return speak_last(ctx, c)

    def set_picture(path: str | None, c: Chat | None, s: DialogState) -> tuple[Chat, DialogState]:
        if path is None:
            s.image = None
            return c or [], s
        try:
            s.image = prepare_image(path)
        except ImageProblem as e:
            return _said(c, "(picture)", str(e)), s
        return c or [], s

    # The reply text shows as soon as it exists; speech synthesis follows as a second step.
    send.click(ask, [text, chat, state], [chat, state, text], api_name="ask").then(
        speak, [chat], [voice], api_name="speak")
    text.submit(ask, [text, chat, state], [chat, state, text], api_visibility="private").then(
        speak, [chat], [voice], api_visibility="private")
    upload.upload(hear_any, [upload, chat, state], [heard, chat, state], api_name="hear_file").then(
        speak, [chat], [voice], api_visibility="private")
    picture.change(set_picture, [picture, chat, state], [chat, state], api_name="set_picture")
    if not ctx.streaming:
        mic.stop_recording(hear_any, [mic, chat, state], [heard, chat, state], api_name="hear").then(
            speak, [chat], [voice], api_visibility="private")
        return

    def chunk_in(chunk: Audio, session: LiveSession | None) -> tuple[str, LiveSession | None]:
        return live_chunk(ctx, chunk, session)

    def stop(session: LiveSession | None, c: Chat | None, s: DialogState) -> tuple[str, Chat, DialogState, None]:
        return live_stop(ctx, session, c, s)

    mic.stream(chunk_in, [mic, live], [heard, live], stream_every=0.5, api_name="live_chunk")
    mic.stop_recording(stop, [live, chat, state], [heard, chat, state, live], api_name="live_stop").then(
        speak, [chat], [voice], api_visibility="private")
