"""The symptom checker page: a chat with the dialog, yes / no / not sure buttons for its questions, the
ranked conditions as a bar chart, and the server's not-medical-advice notice always on screen.

Endpoint (for gradio_client): `/symptom_turn` (one message; returns the chat, the chart data, the
current question).
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ui.context import AppContext
from ui.dialog import DialogState

Chat = list[dict[str, str]]


def ranking_frame(state: DialogState) -> pd.DataFrame:
    d = state.diagnosis
    rows = [(x.name, round(100 * x.probability, 1)) for x in d.diseases] if d and state.findings else []
    return pd.DataFrame(rows, columns=["condition", "probability %"])


def turn(ctx: AppContext, text: str, chat: Chat | None, state: DialogState
         ) -> tuple[Chat, pd.DataFrame, str, DialogState, str]:
    reply = ctx.manager.handle(state, text)
    chat = [*(chat or []), {"role": "user", "content": text}, {"role": "assistant", "content": reply.text}]
    question = state.question.text if state.question else ""
    return chat, ranking_frame(state), question, state, ""


def build(ctx: AppContext) -> None:
    if not ctx.diagnosis:
        gr.Markdown("**The server has no symptom checker model loaded** (no `nui.v1.Diagnosis` service).",
                    elem_id="symptom-unavailable")
        return
    gr.Markdown(f"**{ctx.notice}**", elem_id="symptom-notice")
    state = gr.State(DialogState())
    with gr.Row():
        with gr.Column(scale=3):
            chat = gr.Chatbot(label="Symptom checker", elem_id="symptom-chat", height=360)
            question = gr.Textbox(label="Current question", interactive=False, elem_id="symptom-question")
            with gr.Row():
                yes = gr.Button("Yes", elem_id="symptom-yes")
                no = gr.Button("No", elem_id="symptom-no")
                unsure = gr.Button("Not sure", elem_id="symptom-unsure")
                restart = gr.Button("Start over", elem_id="symptom-restart")
            with gr.Row():
                text = gr.Textbox(label="Describe your symptoms", placeholder="I have a fever and a cough", scale=4,
                                  elem_id="symptom-text")
                send = gr.Button("Send", variant="primary", scale=1, elem_id="symptom-send")
        with gr.Column(scale=2):
            chart = gr.BarPlot(ranking_frame(DialogState()), x="condition", y="probability %",
                               title="Conditions that fit best (not a diagnosis)", sort="-y", y_lim=[0, 100],
                               elem_id="symptom-chart")
    if not ctx.free_text:
        gr.Markdown("This server's symptom checker does not read sentences yet: say or type anything to start, "
                    "then answer its yes / no questions.")

    def send_text(t: str, c: Chat | None, s: DialogState) -> tuple[Chat, pd.DataFrame, str, DialogState, str]:
        return turn(ctx, t, c, s)

    outputs = [chat, chart, question, state, text]
    send.click(send_text, [text, chat, state], outputs, api_name="symptom_turn")
    text.submit(send_text, [text, chat, state], outputs, api_visibility="private")
    for button, said in ((yes, "yes"), (no, "no"), (unsure, "not sure"), (restart, "start over")):
        button.click(lambda c, s, said=said: turn(ctx, said, c, s), [chat, state], outputs, api_visibility="private")
