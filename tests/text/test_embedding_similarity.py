"""The embedding strategy's similarity term: zero when the student's pairwise cosines equal the
teacher's (even if the embeddings themselves differ by a rotation), positive otherwise, and it
trains the student towards the teacher's similarity structure."""

import torch

from distillab.strategies.embedding_kd import EmbeddingKD, pairwise_cosine_gap


def test_the_gap_is_zero_for_the_same_geometry_and_positive_otherwise():
    torch.manual_seed(0)
    teacher = torch.randn(6, 8)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    assert pairwise_cosine_gap(teacher, teacher).item() == 0
    assert pairwise_cosine_gap(3 * teacher @ rotation, teacher).item() < 1e-10  # cosines survive rotation and scale
    assert pairwise_cosine_gap(torch.randn(6, 8), teacher).item() > 0.01


def test_the_similarity_weight_adds_the_term_and_its_gradient():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8))
    batch = {"inputs": torch.randn(5, 4), "teacher_embeddings": torch.randn(1, 5, 8)}
    plain = EmbeddingKD([], student, EmbeddingKD.Params(loss="cosine"))
    with_term = EmbeddingKD([], student, EmbeddingKD.Params(loss="cosine", similarity_weight=2.0))
    base, combined = plain.loss(batch), with_term.loss(batch)
    gap = combined.logs["similarity_gap"]
    assert gap > 0 and "similarity_gap" not in base.logs
    torch.testing.assert_close(combined.loss, base.loss + 2.0 * gap, rtol=1e-5, atol=1e-6)
    teacher = batch["teacher_embeddings"][0]
    before = pairwise_cosine_gap(student(batch["inputs"]), teacher).item()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    for _ in range(50):  # the term's gradient pulls the student's pairwise cosines to the teacher's
        loss = pairwise_cosine_gap(student(batch["inputs"]), teacher)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert pairwise_cosine_gap(student(batch["inputs"]), teacher).item() < before / 2
