"""A slow, obviously correct re-implementation of ROME's v* loop (as ROME and EasyEdit run it),
independent of ``tuner.rome``: every prompt runs alone (no batching, no padding), positions are
counted with the tokenizer the way ROME counts them, and the loop is written out step by step:
forward, loss, early-stop check, no step after the last forward, Adam step, clamp."""

from __future__ import annotations

import torch


def ids_of(tok, text: str) -> list[int]:
    ids = list(tok(text)["input_ids"])
    if tok.eos_token_id is not None and len(ids) > 1 and ids[-1] == tok.eos_token_id:
        ids = ids[:-1]  # some tokenizers append EOS; a prompt does not end there
    return ids


def subject_last_index(tok, text: str, subject: str) -> int:
    end = text.rfind(subject) + len(subject)
    return len(ids_of(tok, text[:end])) - 1


def reference_v_star(model, tok, module_name: str, seq_first: bool, hp, prompt: str, subject: str,
                     target: str, templates: list[str]) -> tuple[torch.Tensor, int]:
    """(v*, number of forward passes) for one fact."""
    module = model.get_submodule(module_name)
    bare = prompt.replace("{}", subject)
    target_ids = ids_of(tok, bare + " " + target)[len(ids_of(tok, bare)):]
    rows = []  # (token ids, index of the subject's last token, positions predicting the target or None)
    for template in templates:
        text = template.replace("{}", prompt).replace("{}", subject)
        ids = ids_of(tok, text)
        rows.append((ids + target_ids[:-1], subject_last_index(tok, text, subject),
                     [len(ids) - 1 + j for j in range(len(target_ids))]))
    kl_text = f"{subject} is a"
    kl_row = (ids_of(tok, kl_text), subject_last_index(tok, kl_text, subject), None)

    def run(ids: list[int], idx: int, delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probs (T, V), the module's output at idx) for one unpadded prompt."""
        seen = {}

        def hook(_m, _args, out):
            out0 = out[0] if isinstance(out, tuple) else out
            if delta is not None:
                out0 = out0.clone()
                if seq_first:
                    out0[idx, 0] = out0[idx, 0] + delta
                else:
                    out0[0, idx] = out0[0, idx] + delta
            seen["at"] = (out0[idx, 0] if seq_first else out0[0, idx]).detach()
            return (out0, *out[1:]) if isinstance(out, tuple) else out0

        handle = module.register_forward_hook(hook)
        try:
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        finally:
            handle.remove()
        return logits.float().log_softmax(-1), seen["at"]

    with torch.no_grad():
        _, v0 = run(rows[0][0][: rows[0][1] + 1], rows[0][1], None)
        kl_init = run(kl_row[0], kl_row[1], None)[0][kl_row[1]]
    delta = torch.zeros_like(v0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    forwards = 0
    for it in range(hp.v_num_grad_steps):
        opt.zero_grad()
        nlls = []
        for ids, idx, pos in rows:
            logp, _ = run(ids, idx, delta)
            nlls.append(-torch.stack([logp[p, t] for p, t in zip(pos, target_ids)]).mean())
        kl_logp, _ = run(kl_row[0], kl_row[1], delta)
        kl = torch.nn.functional.kl_div(kl_init, kl_logp[kl_row[1]], log_target=True, reduction="sum")
        loss = torch.stack(nlls).mean() + hp.kl_factor * kl + hp.v_weight_decay * delta.norm() / v0.norm() ** 2
        forwards += 1
        if hp.early_stop_loss is not None and loss.item() < hp.early_stop_loss:
            break
        if it == hp.v_num_grad_steps - 1:
            break
        loss.backward()
        opt.step()
        with torch.no_grad():
            if delta.norm() > hp.clamp_norm_factor * v0.norm():
                delta.mul_(hp.clamp_norm_factor * v0.norm() / delta.norm())
    return (v0 + delta).detach(), forwards
