"""The Python face: distil your own ``nn.Module`` on your own data, no spec file needed.

    from distillab import Distiller, compare

    distiller = Distiller(teacher=my_teacher, student=my_student, strategy="response", temperature=4.0, alpha=0.9)
    history = distiller.fit(train_data, val_data=val_data, epochs=10)  # tensors, a Dataset or a DataLoader
    distiller.evaluate(test_data)                                        # {"accuracy": ..., "loss": ...}
    report = compare(teacher=my_teacher, student=lambda: MyStudent(), train_data=..., test_data=..., seeds=[0, 1, 2])

Language models take text: ``task="language_modeling"``, a teacher returning logits (B, T, V)
(a ``transformers`` causal LM is wrapped, given its tokenizer), and the documents as a list of
strings (split by position inside each, like a corpus) or a registered corpus name:

    distiller = Distiller(teacher=hf_lm, student=gpt, strategy="token_kd", task="language_modeling",
                          tokenizer=tokenizer, strategy_params={"top_k": 32})
    distiller.fit(documents, epochs=2, context_length=128)   # bits per character on validation
    compare(teacher=hf_lm, student=lambda: MyGPT(), train_data=documents, tokenizer=tokenizer,
            task="language_modeling", context_length=128)

Both build the same parts a spec does and hand them to the one engine (``engine.loop.fit``) and
the one experiment path (``experiment.run``): the loop, strategies, teacher-output cache,
checkpoints and resume, callbacks and the report are those of ``distillab run``.

Custom code is welcome here, and only here: ``strategy`` may be a ``Strategy`` subclass and
``loss`` a callable. A spec, and so the service, accepts registry names only.
"""

from __future__ import annotations

from distillab.api.arguments import TrainingArgs
from distillab.api.common import CustomLoss, History
from distillab.api.distiller import Distiller
from distillab.api.functions import compare, evaluate, train

__all__ = ["CustomLoss", "Distiller", "History", "TrainingArgs", "compare", "evaluate", "train"]
