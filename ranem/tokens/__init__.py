"""Ra-NEM beyond images: binary masks over the tokens of a sequence.

- ``ranem.tokens.ops``: vocabularies, symbol substrates (mask, pad, random, delete) and the
  Gumbel-top-k operator on the token axis (the mask maths of ``ranem.ops.topk_mask``);
- ``ranem.tokens.curves``: insertion/deletion curves and faithfulness over tokens;
- ``ranem.tokens.task``: a synthetic task whose deciding tokens are known;
- ``ranem.tokens.classifiers``: a small transformer and a 1-D CNN, and their training;
- ``ranem.tokens.nem``: token Ra-NEM and NEMt over any such classifier's hidden states;
- ``ranem.tokens.baselines``: Saliency and Integrated Gradients on the embeddings, occlusion, random.
"""
from ranem.tokens.classifiers import CNNClassifier, TransformerClassifier, accuracy, train_classifier
from ranem.tokens.curves import token_deletion_curve, token_faithfulness, token_insertion_curve
from ranem.tokens.nem import SequenceDecoder, SequenceEncoder, TokenNEMt, TokenRaNEM
from ranem.tokens.ops import TOKEN_SUBSTRATES, Vocab, compose, mix_embeddings, omega_tokens, token_substrate
from ranem.tokens.task import TokenTask, evidence_task, task_vocab

__all__ = ["CNNClassifier", "TransformerClassifier", "accuracy", "train_classifier", "token_deletion_curve",
           "token_faithfulness", "token_insertion_curve", "SequenceDecoder", "SequenceEncoder", "TokenNEMt",
           "TokenRaNEM", "TOKEN_SUBSTRATES", "Vocab", "compose", "mix_embeddings", "omega_tokens",
           "token_substrate", "TokenTask", "evidence_task", "task_vocab"]
