from django.db import models


class Issue(models.Model):
    title = models.CharField(max_length=200)

    def __str__(self) -> str:
        return self.title


class Subscriber(models.Model):
    email = models.EmailField()
    name = models.CharField(max_length=100, blank=True)
